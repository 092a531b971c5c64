module pure

go 1.19
