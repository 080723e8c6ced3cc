/* Shared declarations of pyasync_c._primitives.
 *
 * Each concern lives in its own file and registers its types on the module
 * from an init function called by module.c:
 *   locks.c   Lock, Event, Semaphore, BoundedSemaphore (and the waiter deque they share)
 *   queue.c   Queue, LifoQueue, PriorityQueue
 *   gather.c  gather() and its outer future
 *   sleep.c   sleep() and its sleep(0) awaitable
 * and shared mechanisms: waiters.c/.h (waiter FIFO, the _WaitOp awaitable,
 * asyncio objects), coroutine_function.c/.h (sleep and the async methods as
 * callables introspection sees as `async def`).
 */
#ifndef PYASYNC_C_PRIMITIVES_H
#define PYASYNC_C_PRIMITIVES_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>

int prim_locks_init(PyObject *module);
int prim_queue_init(PyObject *module);
int prim_gather_init(PyObject *module);
int prim_sleep_init(PyObject *module);

#endif
