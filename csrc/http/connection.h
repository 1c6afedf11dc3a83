// The socket of a request's connection, to notice a client that went away while its request
// waits for the core.
#pragma once

#include <httplib.h>

namespace pyserve::httpfront {

// The request's connection socket, or -1 (a search of the process's descriptors).
int ConnectionSocket(const httplib::Request& req);
// Whether the client has closed (or reset) the connection.
bool ConnectionClosed(int fd);

}  // namespace pyserve::httpfront
