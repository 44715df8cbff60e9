# gnc_proto: the wire contract (gnc.v1) as generated C++ messages and gRPC stubs,
# included as "proto/gnc.pb.h" and "proto/gnc.grpc.pb.h". Included from the top-level
# CMakeLists.txt (not add_subdirectory) because protobuf_generate() mirrors the proto's
# folder relative to the current source directory.
set(_gnc_gen ${PROJECT_BINARY_DIR}/gen)
file(MAKE_DIRECTORY ${_gnc_gen})
add_library(gnc_proto proto/gnc.proto)
target_link_libraries(gnc_proto PUBLIC protobuf::libprotobuf gRPC::grpc++)
target_include_directories(gnc_proto PUBLIC ${_gnc_gen})
protobuf_generate(TARGET gnc_proto LANGUAGE cpp
  IMPORT_DIRS ${PROJECT_SOURCE_DIR}
  PROTOC_OUT_DIR ${_gnc_gen})
protobuf_generate(TARGET gnc_proto LANGUAGE grpc
  GENERATE_EXTENSIONS .grpc.pb.h .grpc.pb.cc
  PLUGIN "protoc-gen-grpc=\$<TARGET_FILE:gRPC::grpc_cpp_plugin>"
  IMPORT_DIRS ${PROJECT_SOURCE_DIR}
  PROTOC_OUT_DIR ${_gnc_gen})
