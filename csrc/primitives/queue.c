/* Placeholder: replaced by the real implementation. */
#include "primitives.h"

int prim_queue_init(PyObject *module) { return 0; }
