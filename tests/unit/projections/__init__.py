"""Unit tests of the pure projection code and the ClickHouse adapter's SQL builders."""
