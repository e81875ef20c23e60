"""Fault-injection suite (issue: nothing lost, nothing leaked): each file tries one family of faults
on small data built by the tests and asserts what the user gets: a clear error, nothing lost, nothing leaked."""
