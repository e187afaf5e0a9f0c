module github.com/dmsnap/dmsnap

go 1.26.0

require (
	github.com/anatol/devmapper.go v0.0.0-20250316020617-2671eefd35d7 // indirect
	github.com/google/renameio/v2 v2.0.2 // indirect
	github.com/spf13/pflag v1.1.0 // indirect
	golang.org/x/crypto v0.36.0 // indirect
	golang.org/x/sys v0.50.0 // indirect
)
