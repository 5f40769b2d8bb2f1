module github.com/usagemeter/usagemeter/examples

go 1.26.8

replace github.com/usagemeter/usagemeter/schemas => ../schemas

replace github.com/usagemeter/usagemeter/testenv => ../testenv

require github.com/usagemeter/usagemeter/schemas v0.0.0-00010101000000-000000000000

require (
	github.com/google/uuid v1.6.0 // indirect
	github.com/shopspring/decimal v1.4.0 // indirect
)
