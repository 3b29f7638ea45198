"""The long-context retrieval bench (issue #22): tasks, scoring, runs and report."""
