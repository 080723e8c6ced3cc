/* Native TLS layer (tls_transport.c): SSLProtocol / SSLTransport, asyncio's
 * sslproto in C over Python's own ssl objects. */
#ifndef PYASYNC_C_TLS_H
#define PYASYNC_C_TLS_H

#include "loop.h"

/* Adds the SSLProtocol and SSLTransport types to the module. */
int tls_transport_init(PyObject *module, ModuleState *state);

struct TransportObject;
/* The read path of our socket transport when its protocol is our SSLProtocol
 * (exactly, with get_buffer/buffer_updated not replaced on the instance):
 * instead of get_buffer()/buffer_updated() method calls, the transport reads
 * the ciphertext into the loop's read buffer and hands it over here; it is
 * copied into the incoming BIO, the buffer given back to the loop
 * (transport_give_back_read_buffer), then the state machine runs.  -1 with an
 * exception (reported as a failed buffer_updated() call). */
int tls_is_native_protocol(PyObject *protocol);
int tls_feed_from_read_buffer(PyObject *protocol, struct TransportObject *transport,
                              char *buffer, Py_ssize_t n);

#endif
