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

Ends of short tasks travel in batches: the worker holds done items while it
has more prefetched work, at most HOLD_S or HOLD_MAX items. A worker that is
silent too long while holding may be asked for them (flush + SIGUSR1).

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
FLUSH = "flush"

HOLD_S = 0.002  # a done item waits at most this long for company
HOLD_MAX = 64  # items per done message, at most
HOLD_BYTES = 256 * 1024  # results bigger than this in total are sent at once
