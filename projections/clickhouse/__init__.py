"""ClickHouse adapter: client factory, DDL and migrations, batched writer, queries."""
