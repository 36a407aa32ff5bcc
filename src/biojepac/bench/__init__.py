"""`biojepac bench`: models x tasks into a SQLite results database, and the leaderboard read from it.

`grid.py` runs the grid (`run_bench`), `worker.py` makes one prediction in its own process, `peers.py`
runs the external peers (STATE, GEARS), `tasks.py` defines the tasks and `leaderboard.py` writes the tables.
"""
