from cnnrnn.cli import main

main()
