"""`journey kpis` and `journey friction impact`: CX metrics and the cost of friction."""
