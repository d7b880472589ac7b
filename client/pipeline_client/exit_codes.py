"""The exit statuses of pipelinectl: the one place they are defined.

Scripts branch on these, so they never change meaning:
0 everything asked for succeeded, 1 a task failed (or was cancelled, or a wait
timed out), 2 the command line or a pipeline file is wrong, or the daemon refused
the request, 3 the daemon could not be reached.
"""

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3
EXIT_INTERRUPTED = 130  # 128 + SIGINT, the shell's convention for Ctrl-C
