"""Pure decisions: functions of plain data and a clock that say what to do, never do it."""
