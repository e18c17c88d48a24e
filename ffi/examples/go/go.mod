module example.invalid/cryptocore-go

go 1.19
