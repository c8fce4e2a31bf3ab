"""The adapter directory format and everything that reads, writes, publishes or imports one."""
