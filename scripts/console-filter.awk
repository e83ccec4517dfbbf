# The console of `flwr run --stream` as scripts/run.sh shows it (and logs it), less what a
# user cannot act on:
# - Flower's "default simulated SuperNodes changed from 10 to 2": run.sh always names
#   num-supernodes (NUM_SUPERNODES, default 10);
# - the simulation engine's own report of an exception that escaped a ClientApp (this
#   project's app replies with its own errors, client_app/errors.py; "An exception was
#   raised when processing a message by RayBackend", then Ray's traceback twice, some 60
#   lines): one line says where it went instead. The ServerApp names the failure in one
#   line (`dropped reply from node N: error reply: Class: text (file:line)`) and keeps its
#   full text in the run folder's client-errors.log.
# The block ends at the next log line (a level prefix) that is not part of it.
{
  plain = $0
  gsub(/\033\[[0-9;]*m/, "", plain)
}
plain ~ /default simulated SuperNodes changed from 10 to 2/ { next }
plain ~ /^ERROR *: +An exception was raised when processing a message by RayBackend/ {
  print "run.sh: a ClientApp raised an exception; the server names it in one line below (dropped reply from node ...), its traceback is in client-errors.log in the run folder"
  fflush()
  skipping = 1
  next
}
skipping && plain ~ /^(DEBUG|INFO|WARNING|ERROR) *:/ && plain !~ /^ERROR *: +(ray::|Traceback)/ {
  skipping = 0
}
skipping { next }
{
  print
  fflush()
}
