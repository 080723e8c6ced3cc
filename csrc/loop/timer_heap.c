/* The timer heap: a binary min-heap of owned TimerHandle references ordered
 * by (when, sequence), so equal deadlines fire in the order they were
 * scheduled.  Each handle records its index, so cancel() removes it at once in
 * O(log n): cancelled timers never pile up.  Owned by LoopObject.timers. */
#include "loop.h"

static inline int
timer_before(const HandleObject *a, const HandleObject *b)
{
    return a->when < b->when || (a->when == b->when && a->sequence < b->sequence);
}

static inline void
heap_place(TimerHeap *heap, Py_ssize_t index, HandleObject *timer)
{
    heap->items[index] = timer;
    timer->heap_index = index;
}

static void
sift_up(TimerHeap *heap, Py_ssize_t index)
{
    HandleObject *timer = heap->items[index];
    while (index > 0) {
        Py_ssize_t parent = (index - 1) / 2;
        if (!timer_before(timer, heap->items[parent])) {
            break;
        }
        heap_place(heap, index, heap->items[parent]);
        index = parent;
    }
    heap_place(heap, index, timer);
}

static void
sift_down(TimerHeap *heap, Py_ssize_t index)
{
    HandleObject *timer = heap->items[index];
    for (;;) {
        Py_ssize_t child = 2 * index + 1;
        if (child >= heap->count) {
            break;
        }
        if (child + 1 < heap->count && timer_before(heap->items[child + 1], heap->items[child])) {
            child++;
        }
        if (!timer_before(heap->items[child], timer)) {
            break;
        }
        heap_place(heap, index, heap->items[child]);
        index = child;
    }
    heap_place(heap, index, timer);
}

int
timer_heap_push(TimerHeap *heap, HandleObject *timer)
{
    if (heap->count == heap->capacity) {
        Py_ssize_t new_capacity = heap->capacity ? heap->capacity * 2 : 64;
        HandleObject **items = PyMem_Realloc(heap->items, sizeof(HandleObject *) * (size_t)new_capacity);
        if (items == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        heap->items = items;
        heap->capacity = new_capacity;
    }
    Py_INCREF(timer);
    heap->items[heap->count] = timer;
    sift_up(heap, heap->count++);
    return 0;
}

/* Detaches items[index] and restores the heap property. */
static HandleObject *
heap_take(TimerHeap *heap, Py_ssize_t index)
{
    HandleObject *timer = heap->items[index];
    HandleObject *last = heap->items[--heap->count];
    timer->heap_index = -1;
    if (index < heap->count) {
        heap_place(heap, index, last);
        if (index > 0 && timer_before(last, heap->items[(index - 1) / 2])) {
            sift_up(heap, index);
        }
        else {
            sift_down(heap, index);
        }
    }
    return timer;
}

HandleObject *
timer_heap_pop(TimerHeap *heap)
{
    return heap_take(heap, 0);
}

void
timer_heap_remove(TimerHeap *heap, HandleObject *timer)
{
    Py_ssize_t index = timer->heap_index;
    if (index < 0 || index >= heap->count || heap->items[index] != timer) {
        return;
    }
    Py_DECREF(heap_take(heap, index));
}

void
timer_heap_clear(TimerHeap *heap)
{
    while (heap->count > 0) {
        HandleObject *timer = heap->items[--heap->count];
        timer->heap_index = -1;
        Py_DECREF(timer);
    }
    PyMem_Free(heap->items);
    heap->items = NULL;
    heap->capacity = 0;
}

int
timer_heap_traverse(TimerHeap *heap, visitproc visit, void *arg)
{
    for (Py_ssize_t i = 0; i < heap->count; i++) {
        Py_VISIT(heap->items[i]);
    }
    return 0;
}
