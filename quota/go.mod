module github.com/usagemeter/usagemeter/quota

go 1.26.8

replace github.com/usagemeter/usagemeter/schemas => ../schemas

replace github.com/usagemeter/usagemeter/producer => ../producer

replace github.com/usagemeter/usagemeter/testenv => ../testenv

require (
	github.com/segmentio/kafka-go v0.4.51
	github.com/shopspring/decimal v1.6.0
	github.com/usagemeter/usagemeter/schemas v0.0.0-00010101000000-000000000000
	go.uber.org/zap v1.28.0
	golang.org/x/time v0.16.0
)

require (
	github.com/go-viper/mapstructure/v2 v2.5.0 // indirect
	github.com/klauspost/compress v1.15.9 // indirect
	github.com/pierrec/lz4/v4 v4.1.15 // indirect
	go.uber.org/multierr v1.10.0 // indirect
	go.yaml.in/yaml/v3 v3.0.6 // indirect
)
