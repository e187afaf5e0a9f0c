package storedev

// RecordsVersion is recordsVersion, for the tests of package storedev_test.
const RecordsVersion = recordsVersion
