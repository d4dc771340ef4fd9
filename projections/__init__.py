"""Read models as pure code, plus the ClickHouse adapter."""
