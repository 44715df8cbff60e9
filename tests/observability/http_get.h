// HttpGet: a minimal blocking HTTP/1.0 GET for the observability tests, which talk
// only to 127.0.0.1 (the servers' /metrics and Prometheus' HTTP API). Not a general
// client: no redirects, no chunked encoding (HTTP/1.0 answers are not chunked).
#ifndef GNC_TESTS_OBSERVABILITY_HTTP_GET_H_
#define GNC_TESTS_OBSERVABILITY_HTTP_GET_H_

#include <optional>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace gnc::obs {

// HttpGet: GET http://host:port{target}. Returns the body of a 200 answer.
// Errors: UNAVAILABLE (connect, read), INTERNAL (other status, malformed answer).
absl::StatusOr<std::string> HttpGet(const std::string& host, int port, const std::string& target);

// UrlEncode: percent-encodes everything but unreserved characters (RFC 3986).
std::string UrlEncode(absl::string_view s);

// PrometheusQuery: GET /api/v1/query?query=... and returns the value of the one
// series in the result. Errors: NOT_FOUND (no series), FAILED_PRECONDITION (more than
// one series, or status not success), and HttpGet's.
absl::StatusOr<double> PrometheusQueryScalar(int port, const std::string& query);

// TextMetricValue: the value of the sample `series` (name and labels exactly as
// prometheus-cpp writes them, e.g. gnc_step{shard="0"}) in a text exposition, or
// nullopt. prometheus-cpp sorts labels by name.
std::optional<double> TextMetricValue(absl::string_view exposition, absl::string_view series);

}  // namespace gnc::obs

#endif  // GNC_TESTS_OBSERVABILITY_HTTP_GET_H_
