"""Messages between the supervisor and its workers (one DEALER per worker).

    worker -> supervisor   hello {pid, slot}          once connected, ready for work
                           done  {task_id, attempt, ok, result | error}
                           bye   {pid, reason}        clean exit (recycling, shutdown)
    supervisor -> worker   run   {task_id, attempt, function, args, kwargs}
                           run   {task_id, attempt, command, cwd, env}
                           exit  {}                   finish and leave cleanly

A worker runs one task at a time. An `error` is {type, message, traceback}: text,
never a pickled exception, so nothing a task raises can break the channel.
"""

HELLO = "hello"
DONE = "done"
BYE = "bye"
RUN = "run"
EXIT = "exit"
