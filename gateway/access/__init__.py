"""Who may open a stream, and how many: session tokens and stream tickets (`auth`),
the merchant verified in PostgreSQL (`merchants`), connection caps and the new-stream
rate (`admission`, which also keeps the registry of open streams)."""
