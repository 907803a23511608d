module autocrane.invalid/integration-tests/goclient

go 1.26.0

// The Go code generated from proto/ by buf (buf.gen.yaml) into the ignored .cache/goclient/gen,
// under the import path the go_package options name; scripts/install-test-tools.sh generates it.
replace github.com/autocrane/autocrane/gen/go => ../../.cache/goclient/gen

require (
	github.com/autocrane/autocrane/gen/go v0.0.0-00010101000000-000000000000
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
)

require (
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
)
