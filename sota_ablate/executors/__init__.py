"""Where the cells of a grid run: ``local`` (in this process, one after another) or ``ray`` (one Ray task per
cell x seed on a cluster). Importing this package imports neither executor: ``executors.local`` and
``executors.ray`` are imported when used (Ray itself only when the Ray executor runs).
"""
