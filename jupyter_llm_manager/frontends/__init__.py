"""Front-ends, thin and without policy: the notebook magics, the dashboard, the JupyterLab bridge, the CLI.

Each turns clicks and lines into the manager's public calls (through
``actions``, shared by all of them) and the manager's snapshots and events
into what a user sees.
"""
