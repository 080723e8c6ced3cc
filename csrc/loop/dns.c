/* getaddrinfo / getnameinfo on libuv's thread pool (placeholder: not yet
 * implemented; loop.py falls back to asyncio's executor-based versions). */
#include "loop.h"

int
dns_init(PyObject *module, ModuleState *state)
{
    (void)module;
    (void)state;
    return 0;
}
