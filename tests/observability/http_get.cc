#include "tests/observability/http_get.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cctype>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace gnc::obs {

absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& target) {
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(port));
  if (inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
    return absl::InvalidArgumentError(absl::StrCat("not an IPv4 address: ", host));
  }
  const int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) return absl::UnavailableError(absl::StrCat("socket: ", std::strerror(errno)));
  timeval tv{10, 0};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
    const int err = errno;
    close(fd);
    return absl::UnavailableError(
        absl::StrCat("connect ", host, ":", port, ": ", std::strerror(err)));
  }
  const std::string request = absl::StrCat("GET ", target, " HTTP/1.0\r\nHost: ", host, ":", port,
                                           "\r\nAccept: */*\r\nConnection: close\r\n\r\n");
  for (size_t sent = 0; sent < request.size();) {
    const ssize_t n = send(fd, request.data() + sent, request.size() - sent, MSG_NOSIGNAL);
    if (n <= 0) {
      close(fd);
      return absl::UnavailableError(absl::StrCat("send to ", host, ":", port));
    }
    sent += static_cast<size_t>(n);
  }
  std::string answer;
  char buf[16384];
  while (true) {
    const ssize_t n = recv(fd, buf, sizeof(buf), 0);
    if (n == 0) break;
    if (n < 0) {
      const int err = errno;
      close(fd);
      return absl::UnavailableError(
          absl::StrCat("recv from ", host, ":", port, ": ", std::strerror(err)));
    }
    answer.append(buf, static_cast<size_t>(n));
  }
  close(fd);
  const size_t header_end = answer.find("\r\n\r\n");
  if (header_end == std::string::npos) {
    return absl::InternalError(absl::StrCat("malformed HTTP answer from ", host, ":", port));
  }
  const absl::string_view status_line = absl::string_view(answer).substr(0, answer.find("\r\n"));
  std::vector<absl::string_view> parts = absl::StrSplit(status_line, ' ');
  std::string body = answer.substr(header_end + 4);
  if (parts.size() < 2 || parts[1] != "200") {
    return absl::InternalError(absl::StrCat("GET ", target, ": ", status_line, ": ", body));
  }
  return body;
}

std::string UrlEncode(absl::string_view s) {
  static const char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (unsigned char c : s) {
    if (std::isalnum(c) || c == '-' || c == '_' || c == '.' || c == '~') {
      out.push_back(static_cast<char>(c));
    } else {
      out.push_back('%');
      out.push_back(kHex[c >> 4]);
      out.push_back(kHex[c & 15]);
    }
  }
  return out;
}

absl::StatusOr<double> PrometheusQueryScalar(int port, const std::string& query) {
  absl::StatusOr<std::string> body =
      HttpGet("127.0.0.1", port, absl::StrCat("/api/v1/query?query=", UrlEncode(query)));
  if (!body.ok()) return body.status();
  if (body->find("\"status\":\"success\"") == std::string::npos) {
    return absl::FailedPreconditionError(absl::StrCat(query, ": ", *body));
  }
  // A vector result: ..."value":[<unix time>,"<value>"]... once per series.
  constexpr char kValue[] = "\"value\":[";
  const size_t first = body->find(kValue);
  if (first == std::string::npos) return absl::NotFoundError(absl::StrCat(query, ": no series"));
  if (body->find(kValue, first + 1) != std::string::npos) {
    return absl::FailedPreconditionError(absl::StrCat(query, ": several series: ", *body));
  }
  const size_t open = body->find('"', body->find(',', first));
  const size_t close = body->find('"', open + 1);
  if (open == std::string::npos || close == std::string::npos) {
    return absl::InternalError(absl::StrCat(query, ": malformed answer ", *body));
  }
  const std::string text = body->substr(open + 1, close - open - 1);
  char* end = nullptr;
  const double v = std::strtod(text.c_str(), &end);  // also reads NaN and +Inf
  if (end == text.c_str()) return absl::InternalError(absl::StrCat(query, ": value ", text));
  return v;
}

std::optional<double> TextMetricValue(absl::string_view exposition, absl::string_view series) {
  for (absl::string_view line : absl::StrSplit(exposition, '\n')) {
    if (line.size() <= series.size() || line.substr(0, series.size()) != series ||
        line[series.size()] != ' ') {
      continue;
    }
    std::string value(line.substr(series.size() + 1));
    if (const size_t space = value.find(' '); space != std::string::npos) value.resize(space);
    char* end = nullptr;
    const double v = std::strtod(value.c_str(), &end);
    if (end != value.c_str()) return v;
  }
  return std::nullopt;
}

}  // namespace gnc::obs
