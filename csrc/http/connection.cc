#include "connection.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstdlib>
#include <string>

namespace pyserve::httpfront {

// A socket address as text and port.
static bool AddressOf(const sockaddr_storage& address, std::string* host, int* port) {
  char text[INET6_ADDRSTRLEN] = {};
  if (address.ss_family == AF_INET) {
    const auto* in = reinterpret_cast<const sockaddr_in*>(&address);
    *port = ntohs(in->sin_port);
    return inet_ntop(AF_INET, &in->sin_addr, text, sizeof(text)) != nullptr && (*host = text, true);
  }
  if (address.ss_family == AF_INET6) {
    const auto* in6 = reinterpret_cast<const sockaddr_in6*>(&address);
    *port = ntohs(in6->sin6_port);
    return inet_ntop(AF_INET6, &in6->sin6_addr, text, sizeof(text)) != nullptr && (*host = text, true);
  }
  return false;
}

// The request's connection socket, or -1.
static int ConnectionSocket(const httplib::Request& req) {
  DIR* fds = opendir("/proc/self/fd");
  if (fds == nullptr) return -1;
  int found = -1;
  while (dirent* entry = readdir(fds)) {
    const int fd = std::atoi(entry->d_name);
    if (fd <= 2) continue;
    sockaddr_storage local{}, peer{};
    socklen_t local_size = sizeof(local), peer_size = sizeof(peer);
    std::string local_host, peer_host;
    int local_port = -1, peer_port = -1;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &local_size) != 0 ||
        getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &peer_size) != 0 ||
        !AddressOf(local, &local_host, &local_port) || !AddressOf(peer, &peer_host, &peer_port)) {
      continue;
    }
    if (peer_port == req.remote_port && local_port == req.local_port && peer_host == req.remote_addr) {
      found = fd;
      break;
    }
  }
  closedir(fds);
  return found;
}

bool ClientWatch::Gone() {
  if (fd_ == -2) fd_ = ConnectionSocket(req_);
  if (fd_ < 0) return false;
  pollfd p{fd_, POLLRDHUP, 0};
  return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}

void DeliverAwaited(std::vector<Completion>& completions) {
  for (Completion& c : completions) {
    auto* awaited = static_cast<Awaited*>(c.owner.get());
    std::lock_guard<std::mutex> lock(awaited->mutex);
    awaited->response = std::move(c.response);
    awaited->done = true;
    awaited->cv.notify_one();
  }
}

bool PseudoHeader(const std::string& name) {
  return name == "REMOTE_ADDR" || name == "REMOTE_PORT" || name == "LOCAL_ADDR" || name == "LOCAL_PORT";
}

}  // namespace pyserve::httpfront
