from mesh.node._cli import main

main()
