# Runs a command that must succeed: exit status 0 and its output (stdout and stderr merged, in the
# order written) matching REGEX. Arguments: -DCMD=<args separated by |> -DREGEX=<regex>
string(REPLACE "|" ";" cmd "${CMD}")
execute_process(COMMAND ${cmd} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
message("${out}")
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "expected exit 0, got ${rc}")
endif()
if(NOT out MATCHES "${REGEX}")
  message(FATAL_ERROR "the output does not match '${REGEX}'")
endif()
