// TempDir: a fresh folder under the system's temporary directory, removed with
// everything in it when the object goes.
#ifndef GNC_TESTS_UNIT_TEMP_DIR_H_
#define GNC_TESTS_UNIT_TEMP_DIR_H_

#include <stdlib.h>

#include <filesystem>
#include <string>

namespace gnc::testing {

class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "gnc-test.XXXXXX").string();
    path_ = mkdtemp(tmpl.data());
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace gnc::testing

#endif  // GNC_TESTS_UNIT_TEMP_DIR_H_
