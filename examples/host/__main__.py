from examples.host import main

main()
