# Installation, the CMake package, the pkg-config file and the Debian packages.
# Included at the end of the top-level CMakeLists.txt.
#
#   cmake --install build --prefix P   installs
#     bin/gnc-server, bin/gnc-worker                 (components server, worker)
#     lib/libgnc_client.so.<major.minor>             (component client)
#     include/gnc/{worker/client.h, common/layout.h, common/payload.h, common/version.h},
#     lib/libgnc_client.so, lib/cmake/gnc/, lib/pkgconfig/gnc.pc   (component client_dev)
#   cpack -G DEB (in a build with GNC_WITH_CUDA=OFF) makes gnc-server, gnc-worker,
#     libgnc-client<major.minor> and libgnc-client-dev, with their Debian dependencies
#     found by dpkg-shlibdeps.
include(CMakePackageConfigHelpers)

set(_gnc_cmake_dir ${CMAKE_INSTALL_LIBDIR}/cmake/gnc)
set(_gnc_include_dir ${CMAKE_INSTALL_INCLUDEDIR}/gnc)

# The public headers: the client's interface and what it includes, nothing else.
install(FILES worker/client.h DESTINATION ${_gnc_include_dir}/worker COMPONENT client_dev)
install(FILES common/layout.h common/payload.h ${PROJECT_BINARY_DIR}/gen/common/version.h
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

# --- Debian packages (cpack -G DEB) ---
set(CPACK_PACKAGE_NAME gnc)
set(CPACK_PACKAGE_VENDOR gnc)
set(CPACK_PACKAGE_CONTACT "gnc developers <gnc@localhost>" CACHE STRING
  "Maintainer field of the Debian packages")
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_COMPONENTS_ALL server worker client client_dev)
set(CPACK_DEB_COMPONENT_INSTALL ON)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
set(CPACK_DEBIAN_PACKAGE_SECTION science)
set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
set(CPACK_DEBIAN_ENABLE_COMPONENT_DEPENDS ON)

set(_gnc_soversion ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR})
set(CPACK_DEBIAN_SERVER_PACKAGE_NAME gnc-server)
# Each description: the synopsis, then the extended description.
set(CPACK_COMPONENT_SERVER_DESCRIPTION "gnc parameter-server shard (gnc-server)
One shard of a gnc job, a parameter server for large-batch SGD with Gradient Noise
Convolution: membership, step barrier, merge, optimizer and perturbation over gRPC,
with Prometheus metrics.")
set(CPACK_DEBIAN_WORKER_PACKAGE_NAME gnc-worker)
set(CPACK_DEBIAN_WORKER_PACKAGE_RECOMMENDS dataset-fashion-mnist)
set(CPACK_COMPONENT_WORKER_DESCRIPTION "gnc worker with the built-in trainer (gnc-worker)
One worker of a gnc job, training the built-in MLP on Fashion-MNIST
(dataset-fashion-mnist) on the CPU.")
set(CPACK_DEBIAN_CLIENT_PACKAGE_NAME libgnc-client${_gnc_soversion})
set(CPACK_DEBIAN_CLIENT_PACKAGE_SECTION libs)
set(CPACK_DEBIAN_CLIENT_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_COMPONENT_CLIENT_DESCRIPTION "gnc client library
Shared library with which any C++ trainer joins a gnc job, receives its
evaluation points and pushes gradients.")
set(CPACK_DEBIAN_CLIENT_DEV_PACKAGE_NAME libgnc-client-dev)
set(CPACK_DEBIAN_CLIENT_DEV_PACKAGE_SECTION libdevel)
set(CPACK_COMPONENT_CLIENT_DEV_DEPENDS client)
set(CPACK_DEBIAN_CLIENT_DEV_PACKAGE_DEPENDS libabsl-dev)
set(CPACK_COMPONENT_CLIENT_DEV_DESCRIPTION "gnc client library: headers, CMake package, pkg-config
What a C++ trainer builds against: worker/client.h and common/layout.h,
find_package(gnc CONFIG) giving gnc::client, and gnc.pc.")
# The Debian packages depend on Debian's libraries only: a CUDA build links NVIDIA's,
# which dpkg-shlibdeps cannot map to packages. Refused at cpack time with the reason.
set(GNC_CPACK_WITH_CUDA ${GNC_WITH_CUDA})
configure_file(cmake/CPackProject.cmake.in ${PROJECT_BINARY_DIR}/CPackProject.cmake @ONLY)
set(CPACK_PROJECT_CONFIG_FILE ${PROJECT_BINARY_DIR}/CPackProject.cmake)
include(CPack)
