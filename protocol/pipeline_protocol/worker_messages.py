"""Messages between the supervisor and its workers (one DEALER per worker).

    worker -> supervisor   hello   {pid, slot}        once connected, ready for work
                           done    {id, a, ok, result | error, exec_s, next?}
                           start   {id, a}            a prefetched task started
                           skipped {id, a}            a prefetched task was dropped
                           bye     {pid, reason}      clean exit (recycling, shutdown)
    supervisor -> worker   run     {id, a, f, args, kwargs, cwd?, env?, p?}
                           run     {id, a, c, cwd?, env?, p?}
                           skip    {id}               drop a prefetched task if not started
                           exit    {reason}           finish what you have, then leave

A worker runs one task at a time. A run flagged p ("prefetched") was sent while
the worker was busy: the worker announces when it really starts, in the done
message of the task before it ("next") or in a start message, so the deadline
counts from the real start. An `error` is {type, message, traceback}: text,
never a pickled exception, so nothing a task raises can break the channel.
"""

HELLO = "hello"
DONE = "done"
BYE = "bye"
RUN = "run"
EXIT = "exit"
START = "start"
SKIP = "skip"
SKIPPED = "skipped"
