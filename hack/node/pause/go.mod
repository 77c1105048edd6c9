module lamina.local/pause

go 1.26
