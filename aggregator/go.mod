module github.com/usagemeter/usagemeter/aggregator

go 1.26.8

require (
	github.com/go-viper/mapstructure/v2 v2.5.0
	github.com/shopspring/decimal v1.4.0
	go.yaml.in/yaml/v3 v3.0.4
)

require (
	github.com/kr/pretty v0.3.1 // indirect
	gopkg.in/check.v1 v1.0.0-20190902080502-41f04d3bba15 // indirect
)
