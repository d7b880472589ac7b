"""Messages between the supervisor and its workers (one DEALER per worker).

    worker -> supervisor   hello   {pid, slot}           once connected, ready for work
                           done    {items, next?, ns?}   tasks that ended, in order
                           start   {id, a, s}            a prefetched task started
                           skipped {ids}                 prefetched tasks it dropped
                           bye     {pid, reason}         clean exit (recycling, shutdown)
    supervisor -> worker   run     {items}               tasks to run, in order
                           skip    {ids}                 drop these prefetched tasks if not started
                           flush   {}                    report what you hold now (with SIGUSR1)
                           exit    {reason}              finish what you have, then leave

    run item   {id, a, f, args, kwargs, cwd?, env?, p?}  or  {id, a, c, cwd?, env?, p?}
    done item  {id, a, ok, result | error, exec_s, s}

A worker runs one task at a time. Items flagged p ("prefetched") were sent
while the worker was busy, or behind another item of the same run: the
supervisor counts them as queued until the worker says they started. A done
item carries its task's start `s` (CLOCK_MONOTONIC, the same clock in every
process), and `next`/`ns` name the task that started after the last item, so
deadlines count from the real start even when the worker reports late.

A task's end leaves before the next task starts (a done item, whose `next`
names the task that started): a worker never holds a finished result while
it runs something else, so a task that hangs, crashes or is killed takes no
other task's result with it, and the supervisor always knows which task runs.

An `error` is {type, message, traceback}: text, never a pickled exception, so
nothing a task raises can break the channel.
"""

HELLO = "hello"
DONE = "done"
BYE = "bye"
RUN = "run"
EXIT = "exit"
START = "start"
SKIP = "skip"
SKIPPED = "skipped"

