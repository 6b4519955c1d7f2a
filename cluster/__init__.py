"""Starting, joining and stopping raymail on a Ray cluster; the ``raymail`` command."""
