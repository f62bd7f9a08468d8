"""nginx.conf for the nginx + nchan peer (memory store or Redis store)."""

from __future__ import annotations

import os

NCHAN_MODULE = "/usr/lib/nginx/modules/ngx_nchan_module.so"


def render_conf(
    port: int,
    workers: int = 1,
    redis_url: str | None = None,
    nofile: int = 65536,
    module: str = NCHAN_MODULE,
) -> str:
    """Subscriber at ``/sub/<channel>`` (EventSource), publisher at ``/pub/<channel>``.

    With ``redis_url`` nchan keeps messages in that Redis (nchan >= 1.3 style:
    an ``upstream`` with ``nchan_redis_server`` and ``nchan_redis_pass``).
    """
    if not os.path.exists(module):
        raise FileNotFoundError(module)
    upstream = store = ""
    if redis_url:
        upstream = f"""
    upstream nchan_redis {{
        nchan_redis_server {redis_url};
    }}"""
        store = "nchan_redis_pass nchan_redis;"
    return f"""load_module {module};
worker_processes {workers};
worker_rlimit_nofile {nofile};
events {{
    worker_connections {nofile};
    multi_accept on;
}}
http {{
    access_log off;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 300s;
    client_body_buffer_size 16k;
    nchan_max_reserved_memory 256M;{upstream}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = /health/live {{
            return 200 "ok";
        }}
        location ~ ^/sub/(\\w+)$ {{
            nchan_subscriber eventsource;
            nchan_channel_id $1;
            nchan_eventsource_event progress;
            {store}
        }}
        location ~ ^/pub/(\\w+)$ {{
            nchan_publisher;
            nchan_channel_id $1;
            nchan_message_buffer_length 10;
            {store}
        }}
    }}
}}
"""
