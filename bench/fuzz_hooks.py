"""schemathesis hooks for bench/fuzz_api.sh: bodies of the media types schemathesis has no
serializer for travel as the raw bytes it generates (an export file is gzip: random bytes test
how the import refuses a file that is not one)."""

import schemathesis

schemathesis.serializer.alias("application/gzip", "application/octet-stream")
