CREATE TABLE IF NOT EXISTS merchants (
  id          text PRIMARY KEY,
  shop_domain text NOT NULL UNIQUE,
  active      boolean NOT NULL DEFAULT true
);
