# Installation, the CMake package and the pkg-config file.
# Included at the end of the top-level CMakeLists.txt.
#
#   cmake --install build --prefix P   installs
#     bin/gnc-server, bin/gnc-worker                 (components server, worker)
#     lib/libgnc_client.so.<major.minor>             (component client)
#     include/gnc/{worker/client.h, common/layout.h, common/version.h},
#     lib/libgnc_client.so, lib/cmake/gnc/, lib/pkgconfig/gnc.pc   (component client_dev)
include(CMakePackageConfigHelpers)

set(_gnc_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/gnc)
set(_gnc_include_dir ${CMAKE_INSTALL_INCLUDEDIR}/gnc)

# The public headers: the client's interface and what it includes, nothing else.
install(FILES worker/client.h DESTINATION ${_gnc_include_dir}/worker COMPONENT client_dev)
install(FILES common/layout.h ${PROJECT_BINARY_DIR}/gen/common/version.h
  DESTINATION ${_gnc_include_dir}/common COMPONENT client_dev)

install(TARGETS gnc_client_shared EXPORT gncTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR} COMPONENT client NAMELINK_COMPONENT client_dev
  INCLUDES DESTINATION ${_gnc_include_dir})
install(EXPORT gncTargets NAMESPACE gnc:: DESTINATION ${_gnc_cmake_dir} COMPONENT client_dev)
configure_package_config_file(cmake/gncConfig.cmake.in
  ${PROJECT_BINARY_DIR}/gncConfig.cmake INSTALL_DESTINATION ${_gnc_cmake_dir})
# 0.x: a minor release may change the API.
write_basic_package_version_file(${PROJECT_BINARY_DIR}/gncConfigVersion.cmake
  COMPATIBILITY SameMinorVersion)
install(FILES ${PROJECT_BINARY_DIR}/gncConfig.cmake ${PROJECT_BINARY_DIR}/gncConfigVersion.cmake
  DESTINATION ${_gnc_cmake_dir} COMPONENT client_dev)

# gnc.pc finds its prefix relative to its own folder, so it is right wherever the
# tree is installed (cmake --install --prefix, DESTDIR, packages).
file(RELATIVE_PATH GNC_PC_PREFIX_FROM_PCDIR /prefix/${CMAKE_INSTALL_LIBDIR}/pkgconfig /prefix)
string(REGEX REPLACE "/$" "" GNC_PC_PREFIX_FROM_PCDIR "${GNC_PC_PREFIX_FROM_PCDIR}")
configure_file(cmake/gnc.pc.in ${PROJECT_BINARY_DIR}/gnc.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/gnc.pc DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig
  COMPONENT client_dev)
