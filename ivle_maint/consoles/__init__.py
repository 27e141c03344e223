"""The student processes (IVLE's consoles and whatever else a student
runs) inside the user jails: listing them and stopping them.

- jail_processes: find them, stop them, report in bounded lines.
"""
