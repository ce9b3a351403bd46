# Configure and build libfastfvae_cuda; on failure warn and carry on (cmake -P script).
# Inputs: SOURCE_DIR BINARY_DIR STAGE_DIR CUDA_COMPILER ARCHITECTURES (comma-separated) BUILD_TYPE
string(REPLACE "," ";" arch_list "${ARCHITECTURES}")
file(REMOVE_RECURSE ${STAGE_DIR})
execute_process(
  COMMAND ${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${BINARY_DIR}
          -DCMAKE_BUILD_TYPE=${BUILD_TYPE} -DCMAKE_CUDA_COMPILER=${CUDA_COMPILER}
          "-DCMAKE_CUDA_ARCHITECTURES=${arch_list}" -DFASTFVAE_STAGE=${STAGE_DIR}
  RESULT_VARIABLE configure_result)
if(NOT configure_result EQUAL 0)
  message(WARNING "fastfvae: configuring the CUDA library failed (${configure_result}); the CPU library is unaffected")
  return()
endif()
execute_process(COMMAND ${CMAKE_COMMAND} --build ${BINARY_DIR} --target stage RESULT_VARIABLE build_result)
if(NOT build_result EQUAL 0)
  message(WARNING "fastfvae: building the CUDA library failed (${build_result}); the CPU library is unaffected")
endif()
