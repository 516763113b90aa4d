"""Services: functions that change state, each in a transaction. One module per area."""
