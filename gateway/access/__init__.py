"""Who may open a stream, and how many: session tokens and stream tickets (`auth`),
the merchant verified in PostgreSQL, with the paced lookups of shops not verified
before (`merchants`), and connection caps (`admission`, which also keeps the
registry of open streams)."""
