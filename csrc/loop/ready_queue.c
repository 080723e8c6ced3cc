/* The ready queue: a growable power-of-two ring of owned HandleObject
 * references, FIFO.  The loop pops exactly the number of items present when
 * an iteration starts, so callbacks scheduled meanwhile wait for the next one.
 * Owned by LoopObject.ready; cleared on close and in tp_clear. */
#include "loop.h"

static int
ready_grow(ReadyQueue *queue)
{
    Py_ssize_t new_capacity = queue->capacity ? queue->capacity * 2 : 64;
    HandleObject **items = PyMem_Malloc(sizeof(HandleObject *) * (size_t)new_capacity);
    if (items == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < queue->count; i++) {
        items[i] = queue->items[(queue->head + i) & (queue->capacity - 1)];
    }
    PyMem_Free(queue->items);
    queue->items = items;
    queue->head = 0;
    queue->capacity = new_capacity;
    return 0;
}

int
ready_push(ReadyQueue *queue, HandleObject *handle)
{
    if (queue->count == queue->capacity && ready_grow(queue) < 0) {
        return -1;
    }
    Py_INCREF(handle);
#if PYASYNC_C_STATS
    handle->ready_ns = queue->stamp;  /* for the lag statistics (stats.c) */
#endif
    queue->items[(queue->head + queue->count) & (queue->capacity - 1)] = handle;
    queue->count++;
    return 0;
}

void
ready_clear(ReadyQueue *queue)
{
    /* Pop first, release after: a finalizer may schedule more callbacks. */
    while (queue->count > 0) {
        HandleObject *handle = ready_pop(queue);
        Py_DECREF(handle);
    }
    PyMem_Free(queue->items);
    queue->items = NULL;
    queue->head = queue->capacity = 0;
}

int
ready_traverse(ReadyQueue *queue, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < queue->count; i++) {
        Py_VISIT(queue->items[(queue->head + i) & (queue->capacity - 1)]);
    }
    return 0;
}
