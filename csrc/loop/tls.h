/* Native TLS layer (tls_transport.c): SSLProtocol / SSLTransport, asyncio's
 * sslproto in C over Python's own ssl objects. */
#ifndef PYASYNC_C_TLS_H
#define PYASYNC_C_TLS_H

#include "loop.h"

/* Adds the SSLProtocol and SSLTransport types to the module. */
int tls_transport_init(PyObject *module, ModuleState *state);

#endif
