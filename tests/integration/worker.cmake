# Worker integration tests: real gnc-server and gnc-worker processes on 127.0.0.1,
# started through deploy/local/launch.sh. Included from this folder's CMakeLists.txt.
foreach(_name train kill restart flags)
  add_test(NAME worker_${_name}_integration
    COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/worker_${_name}_test.sh
      $<TARGET_FILE:gnc-server> $<TARGET_FILE:gnc-worker>)
  set_tests_properties(worker_${_name}_integration PROPERTIES TIMEOUT 180 LABELS integration)
endforeach()

# Failure tests (DESIGN section 6): real processes and real signals on 127.0.0.1.
foreach(_name shard_restart shard_sigterm shard_blank_restart worker_restart_after_push
    worker_kill_noquorum)
  add_test(NAME ${_name}_failure
    COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/${_name}_test.sh
      $<TARGET_FILE:gnc-server> $<TARGET_FILE:gnc-worker>)
  set_tests_properties(${_name}_failure PROPERTIES TIMEOUT 300 LABELS "integration;failure")
endforeach()
# deploy/local/compare.sh --quick: the reduced grid of real jobs, its JSON, table and
# plots (skipped, saying why, without matplotlib).
add_test(NAME compare_quick_integration
  COMMAND bash ${CMAKE_CURRENT_SOURCE_DIR}/compare_quick_test.sh ${PROJECT_BINARY_DIR})
set_tests_properties(compare_quick_integration PROPERTIES TIMEOUT 1200 LABELS integration
  SKIP_RETURN_CODE 77)
